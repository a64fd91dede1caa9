"""Official-checkpoint mapping tables of model parts (rows for `convert.official`)."""
