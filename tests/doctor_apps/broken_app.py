"""An app whose import fails, as a misconfigured one does."""

SETTINGS = {}
DATABASE_URL = SETTINGS["DATABASE_URL"]
