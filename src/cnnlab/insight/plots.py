"""The figure helpers moved to cnnlab.plotting (the bottom layer: the engine draws run figures too).

Kept so `from cnnlab.insight import plots` and `from cnnlab.insight.plots import …` go on working; new code
imports cnnlab.plotting.
"""

from cnnlab.plotting import (OK_COLOUR, WRONG_COLOUR, plt, prediction_titles, save_curves, save_figure, save_grid,
                             save_image, show_image)

_save = save_figure  # the names insight/features.py and older callers use
_show = show_image

__all__ = ["OK_COLOUR", "WRONG_COLOUR", "plt", "prediction_titles", "save_curves", "save_figure", "save_grid", "save_image",
           "show_image", "_save", "_show"]
