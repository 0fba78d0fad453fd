"""Images and datasets: reading files into tensors, listing datasets, drawing training windows, generated sets.

Nothing here imports the network.
"""
