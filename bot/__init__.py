"""GitHub edge of cibot: webhook server, comment commands, GitHub client, CLI."""
