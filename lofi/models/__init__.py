"""Models of LoFi: the video encoders (TSM ResNet-18/34/50, R(2+1)D-18) that turn a batch
of snippets into features, and the temporal-action-localization heads.

Import the submodules you need (`lofi.models.encoders`, ...); this package imports
nothing heavy so that `import lofi.models` stays cheap."""
