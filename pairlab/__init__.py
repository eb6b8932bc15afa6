"""The `pairlab` command line: the app on the workspace's engine, the engine in the
foreground (headless), and the other commands. The top floor: it imports the app (tui) and
the engine; nothing imports it."""
