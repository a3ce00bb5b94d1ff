"""The node agent, which runs a cluster's scheduler and workers on every node of every backend.

- :mod:`coiled_core.node.config`: the node protocol, ``node.json`` in and ``agent.json`` out, and
  the builder backends call;
- :mod:`coiled_core.node.addons`: what a backend adds on its own nodes (secrets, logs, names);
- :mod:`coiled_core.node.agent`: the agent itself (``python -m coiled_core.node node.json``).
"""
