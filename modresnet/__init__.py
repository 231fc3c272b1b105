"""modresnet: ModifiedResNet CIFAR-10 classifiers in plain PyTorch; Ray lives in jobs/ and serve/."""
