"""modresnet: ModifiedResNet CIFAR-10 classifiers in plain PyTorch (Ray: jobs/ and serve/)."""
