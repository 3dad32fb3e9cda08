"""The runtime type checker behind BEARTYPE=1: beartype with PEP 484's numeric tower.

Python users pass `temperature=0` where a float is annotated; plain beartype rejects an int there, the
numeric tower accepts it (and a float where a complex is annotated), as type checkers do.
"""

from beartype import BeartypeConf, beartype

checker = beartype(conf=BeartypeConf(is_pep484_tower=True))
