"""The method: tensors in, tensors out. Window placement, the network, similarity maps, the loss and the anomaly map.

Nothing here reads files, knows about runs or prints; it imports nothing of the package but `config`.
"""
