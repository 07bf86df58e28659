"""List every job-file section and key with its default and meaning."""
HELP = "list every job-file key with its default"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from ..jobfile import describe_keys

    print(describe_keys())
    return 0
