"""Quantization for Gemma 3 GGUFs: recipes as data tables (`recipes`), the llama.cpp bridge
(`llama`), the importance matrix (`imatrix`) and the `edge quantize` command (`cli`)."""
