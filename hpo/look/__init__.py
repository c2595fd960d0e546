"""The commands that look at a study and never write: stats (and its named SQL), status,
report and the dashboard."""
