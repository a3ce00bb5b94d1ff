"""The node add-on. The agent imports it on every node, so it (and the empty ``__init__``) imports nothing else."""
from coiled_core.backend import NodeAddOn


class NamedWorker(NodeAddOn):
    """Names the node's one worker after the node (each node counts from 0: ``<prefix><index>`` would repeat)."""
    def worker_names(self, prefix, count, first_index):
        return [self.settings["name"]] if count == 1 and first_index == 0 else None
