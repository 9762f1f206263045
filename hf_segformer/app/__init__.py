"""Apps: the Gradio demo and the Hugging Face Space folder that serves it."""
