"""The broker-side library: connect to any control-plane node and keep a current view."""
