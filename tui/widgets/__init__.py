"""The panels of the main screen, one widget each."""
