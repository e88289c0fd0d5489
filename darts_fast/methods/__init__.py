"""Search methods, one module each, registered by name (``registry``): DARTS, PC-DARTS, GDAS,
P-DARTS, ProxylessNAS, and the single-path supernets (SPOS, random search with weight sharing,
ENAS).
Adding one is a module with its network and a registered ``registry.Method``."""
from . import darts, enas, gdas, pc_darts, pdarts, proxyless, single_path  # noqa: F401  (each registers its method)
from .registry import Method, MethodOptionError, get, methods, register, unregister

__all__ = ["Method", "MethodOptionError", "get", "methods", "register", "unregister"]
