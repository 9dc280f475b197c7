"""The swarm teaches its nodes (issue 23): consensus records, LoRA adapters, a guard, sharing.

* :mod:`.records` — a coordinator's bounded store of the consensus it reached per chunk;
* :mod:`.train` — fit a LoRA adapter with ``peft`` on CPU from records passing a bar;
* :mod:`.guard` — score adapter against base before a node adopts it;
* :mod:`.adapters` — the versioned adapter directories, adoption, bundles signed by the trainer;
* :mod:`.share` — fetching an adapter from a peer over the wire protocol.
"""
