"""Wire protocol shared by the host and the runner (the runner issue fills this module in).

PROTOCOL_VERSION is part of every env key: bump it whenever frames change incompatibly.
"""

PROTOCOL_VERSION = 1
