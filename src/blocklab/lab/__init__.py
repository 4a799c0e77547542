"""The lab: experiments that check each block's textbook claim on real runs."""
