"""
The application: the option table, the config file, assembling a
TurnService, listeners, reload, signals, health, systemd.
"""
