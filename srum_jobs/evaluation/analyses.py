"""(in progress)"""


def run_analyses(ctx, progress=True):
    raise NotImplementedError


def load_analyses(ctx):
    return {}


def analysis_tables(a):
    return []


def analysis_figures(a):
    return []
