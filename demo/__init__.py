"""The demo's data (corpus/, model/) and the tools that generate them (tools/); not installed."""
