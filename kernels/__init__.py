from .distill_ce import distill_ce as distill_ce
from .nt_xent import nt_xent as nt_xent
