"""Settings: the options, the config file, the key, the proxy and CA, the paths."""
