"""Training ViTs: data pipelines, recipes, model.fit and the `keras-vit train` command."""
