"""The one settings model of learn-stream (read by every part)."""
from config.settings import REPO_ROOT, Settings, load_settings

__all__ = ["REPO_ROOT", "Settings", "load_settings"]
