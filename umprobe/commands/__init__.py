"""umprobe's click subcommands that live outside cli.py, one module per command or group.

cli.py imports each and adds it to the top-level group; nothing here imports cli.py.
"""

__all__: list[str] = []
