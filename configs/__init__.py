"""Bundled study configs (YAML); `optsearch study NAME.yaml` finds them from any directory."""
