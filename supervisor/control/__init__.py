"""The control plane: the drop directory, the Unix socket protocol, the CLI."""
