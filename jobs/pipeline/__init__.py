"""`modresnet pipeline`: one resumable job from a search to the live endpoint (search, retrain,
test, register, gate, promote), its state in pipeline.json."""
