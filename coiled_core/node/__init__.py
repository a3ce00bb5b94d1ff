"""The node agent; see :mod:`coiled_core.node.agent`."""
