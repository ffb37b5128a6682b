"""The run's configuration: every option declared once (``declaration.py``), read from
YAML and flags (``parsing.py``), and turned into the small specs the rooms below take
(``specs.py``). Sits above data, optim and outputs because it lists their registries'
entries as choices; the rooms below never see a Config."""
