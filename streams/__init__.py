"""How the data flows: the Faust app, its agents, the web endpoints and the CLI."""
