"""The local stack: real servers from package registries, run as background processes.

Everything lives under the stack directory (``.stack/`` by default, git-ignored):
``<service>/`` holds a service's data, ``run/<service>.json`` the record of the process we
started, ``logs/<service>.log`` its output. ``bfc up`` is idempotent: a service whose
recorded process is alive and healthy is left alone.
"""
