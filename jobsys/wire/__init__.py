"""What a job is on the wire: the envelope, the header vocabulary, the dead-letter record.

Pure: nothing here imports a broker client or does I/O.
"""
