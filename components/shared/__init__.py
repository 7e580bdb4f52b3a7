"""What steps share: the typed pipeline config, storage, and the contracts between steps (splits, data files, model
package, serving graph, serving record, outcomes, metrics, run paths); no step imports another."""
