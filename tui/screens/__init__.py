"""Screens pushed over the main one: help, veto reason, quit confirmation, editor, log."""
