"""The console's views (one module each) and its modal dialogs."""
