"""sofo-lab: train recurrent networks on neuroscience tasks with SOFO, UORO, Adam and TBPTT."""
__version__ = "0.1.0"
