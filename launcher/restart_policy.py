"""When ``pscluster up`` restarts a service that exited: compose's restart policies, emulated.

The table below is the one ``docker-compose.yml`` gives each service (``restart:``;
``tests/test_compose.py`` checks that the two agree), applied as Docker applies it:

- ``on-failure`` (workers): restarted after a non-zero exit; a worker that exits 0 is done.
- ``unless-stopped`` (coordinator, shards): restarted after any exit the operator did not ask for
  (the launcher only stops services at the end of the job, or on Ctrl-C).
- ``always`` as ``unless-stopped``; ``no``: never.

Before each restart Docker waits, starting at 100 ms and doubling with each restart that follows
a short run, back to 100 ms once a service has run for 10 s; the launcher waits the same. On top
of the policy the launcher ends the job when a service crash-loops (``processes.may_restart``),
where Docker would go on restarting it for good.
"""

from __future__ import annotations

from enum import StrEnum


class RestartPolicy(StrEnum):
    NO = "no"
    ON_FAILURE = "on-failure"
    UNLESS_STOPPED = "unless-stopped"
    ALWAYS = "always"


# Per kind of service (the compose file's service names: ps0, ps1, ... are shards).
COMPOSE_POLICIES = {
    "coordinator": RestartPolicy.UNLESS_STOPPED,
    "ps": RestartPolicy.UNLESS_STOPPED,
    "worker": RestartPolicy.ON_FAILURE,
}
# Docker's restart delay: the first, and how long a run resets it.
FIRST_DELAY_S = 0.1
RESET_AFTER_S = 10.0
MAX_DELAY_S = 60.0


def policy_for(service_name: str) -> RestartPolicy:
    """The policy of ``coordinator``, ``ps<i>`` or ``worker<i>``."""
    kind = service_name.rstrip("0123456789")
    return COMPOSE_POLICIES[kind]


def restarts_after(policy: RestartPolicy, exit_code: int) -> bool:
    """Whether a service that exited with ``exit_code`` (negative: killed by that signal),
    not stopped by the operator, is started again."""
    if policy is RestartPolicy.NO:
        return False
    if policy is RestartPolicy.ON_FAILURE:
        return exit_code != 0
    return True


def restart_delay(previous_delay_s: float | None, ran_s: float) -> float:
    """Seconds to wait before this restart: 100 ms, doubled after each run shorter than 10 s
    (up to a minute), 100 ms again after a longer one."""
    if previous_delay_s is None or ran_s >= RESET_AFTER_S:
        return FIRST_DELAY_S
    return min(MAX_DELAY_S, 2 * previous_delay_s)
