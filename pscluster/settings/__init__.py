"""One declarative settings object per service: the single source of truth.

Every field is an environment variable ``PSC_<FIELD>`` with a documented default; command-line
flags ``--field-name`` mirror them and win over the environment. The README's table is generated
from these classes (``python -m pscluster.settings_doc``), so the two never disagree.

The job itself (model, data, mode, N, k, optimizer, steps) is configured on the coordinator only;
shards and workers receive it when they register, so a cluster cannot run with two opinions of
what it is training.

Split by concern: ``choices`` (the enums), ``service`` (every service), ``job``, one module per
service, ``timeouts`` and ``loading``; everything is importable from ``pscluster.settings``.
"""

from pscluster.settings.choices import (
    AdamForm,
    Backend,
    DataMode,
    DelayKind,
    Mode,
    OptimizerName,
    SparseOptimizerName,
    StalenessPolicy,
    WireDtype,
)
from pscluster.settings.coordinator import CoordinatorSettings
from pscluster.settings.job import JobConfig, parse_hidden
from pscluster.settings.loading import (
    SettingsT,
    load_settings,
    settings_error_exit,
    unknown_variables,
)
from pscluster.settings.service import ENV_PREFIX, ServiceSettings
from pscluster.settings.shard import ShardSettings
from pscluster.settings.timeouts import PULL_LONG_POLL_S
from pscluster.settings.worker import WorkerSettings

__all__ = [
    "ENV_PREFIX",
    "PULL_LONG_POLL_S",
    "AdamForm",
    "Backend",
    "CoordinatorSettings",
    "DataMode",
    "DelayKind",
    "JobConfig",
    "Mode",
    "OptimizerName",
    "ServiceSettings",
    "SettingsT",
    "ShardSettings",
    "SparseOptimizerName",
    "StalenessPolicy",
    "WireDtype",
    "WorkerSettings",
    "load_settings",
    "parse_hidden",
    "settings_error_exit",
    "unknown_variables",
]
