"""One console for results (stdout) and one for errors and progress (stderr)."""

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def fail(message: str, exit_code: int = 2) -> None:
    """Print one red line on stderr and exit with `exit_code`."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(exit_code)
