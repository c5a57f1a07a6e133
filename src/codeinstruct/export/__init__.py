"""Export a codeinstruct model to other runtimes (GGUF for llama.cpp, Ollama and LM Studio)."""
