"""The console with its gateway listening: an HTTP client's session shows up live (Pilot)."""

from __future__ import annotations

import httpx
from textual.widgets import Label, Static

from console.app import SessionConsole
from console.screens.dashboard import HTTP_MARK
from engine import Engine
from widgets import VirtualTable

APP_KEY = "console-test-app-key"


async def test_a_session_created_over_http_appears_marked_with_the_gateway_panel(make_config):
    async with Engine(make_config(gateway={"app_keys": (APP_KEY,)})) as engine:
        await engine.create_session("in-process-user")
        app = SessionConsole(engine=engine, refresh_hz=0.25, listen="127.0.0.1:0")
        async with app.run_test(size=(160, 45)) as pilot:
            assert app.gateway is not None
            address = app.gateway.address
            assert f"http://{address}" in app.status_text("Dashboard")
            async with httpx.AsyncClient(base_url=f"http://{address}") as http:
                created = await http.post(
                    "/v1/sessions", json={"user_id": "curl-user"},
                    headers={"Authorization": f"Bearer {APP_KEY}"},
                )
                sid, token = created.json()["session_id"], created.json()["token"]
                reply = await http.post(
                    f"/v1/sessions/{sid}/messages", json={"content": "hi from curl"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert reply.status_code == 200
            app.refresh_data(force=True)
            await pilot.pause()
            table = app.screen.query_one("#sessions", VirtualTable)
            by_user = {v.user_id: v for v in table.rows}
            assert by_user["curl-user"].origin == "http"
            assert by_user["in-process-user"].origin == "python"
            row = list(table.rows).index(by_user["curl-user"])
            assert (HTTP_MARK + sid[:7]) in table.render_line(1 + row).text  # line 0: header
            title = str(app.screen.query_one("#gateway-title", Label).content)
            assert f"Gateway {address}" in title and "streams" in title
            panel = str(app.screen.query_one("#gateway", Static).content)
            assert "POST /v1/sessions/{id}/messages" in panel
            assert "POST /v1/sessions " in panel
            # The filter narrows the table to the sessions created over HTTP.
            await pilot.press("slash", *"via:http", "enter")
            await pilot.pause()
            assert [v.user_id for v in table.rows] == ["curl-user"]
        assert app.gateway is not None  # stopped on exit; the engine is still the test's
