"""The `/` filter syntax the tables share: space-separated terms, each `name:value` or a bare word.

Each table's filter turns the terms into its own predicate; this module only splits and checks
them, so a typo in a field name is reported the same way in every view.
"""

from __future__ import annotations

from collections.abc import Mapping


def split_terms(
    query: str, names: Mapping[str, str], usage: str
) -> tuple[list[str], dict[str, str]]:
    """Bare words and `name:value` fields of `query`, lowercased.

    `names` maps each accepted name (aliases included, lowercase) to its field; an unknown name
    or an empty value raises ValueError that ends with `usage` (what the view accepts).
    """
    words: list[str] = []
    fields: dict[str, str] = {}
    for term in query.split():
        if ":" not in term:
            words.append(term.lower())
            continue
        name, _, value = term.partition(":")
        field = names.get(name.lower())
        if field is None or not value:
            raise ValueError(f"unknown filter {term!r}: use {usage}")
        fields[field] = value.lower()
    return words, fields
