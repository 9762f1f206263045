"""Scripts the tests run in processes of their own (through accelerate launch or python)."""
