from .distill_ce import distill_ce as distill_ce
