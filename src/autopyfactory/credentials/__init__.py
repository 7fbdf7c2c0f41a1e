"""The credential manager: X509/VOMS renewal, MyProxy, tokens, SSH and cloud keys, health.

Public interface (what the engine and the plugins use):

* ``CredentialManager(profiles, factory_id=, state_dir=, on_change=)``: ``start()``, ``stop()``,
  ``health(name)``, ``all_health()``, ``proxy_path(name)``, ``token(name)``, ``check_now(name)``
* ``gate(profile_names, healths, now) -> str | None``: pure; why a queue must not submit
* ``CredentialHealth``, ``HealthState``
* ``resolve``: how plugins reach profiles (``proxy_file``, ``bearer_token``, ``queue_profiles``)
"""

from autopyfactory.credentials.health import CredentialHealth, HealthState, gate
from autopyfactory.credentials.manager import CredentialError, CredentialManager, status_file

__all__ = [
    "CredentialError",
    "CredentialHealth",
    "CredentialManager",
    "HealthState",
    "gate",
    "status_file",
]
