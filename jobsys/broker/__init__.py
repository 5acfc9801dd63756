"""The broker edge: connections, the confirm path beneath aio-pika, error translation, the
management HTTP API. The one place aio-pika, aiormq and pamqp are reached from below.
"""
