"""Pure `nn.Module`s of IndexTTS2 whose state-dict keys are exactly the official ones."""
