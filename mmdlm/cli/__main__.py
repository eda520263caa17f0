from mmdlm.cli import app

app(prog_name="mmdlm")
